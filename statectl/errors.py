"""Errors the core raises, each carrying the exit code the CLI returns for it.

The core never prints; the CLI turns a StatectlError into one line on stderr.
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique  # two codes with one value would silently alias each other
class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # unexpected error (a bug: rerun with --debug)
    USAGE = 2  # bad arguments: scope flags, segments, key, value
    NOT_FOUND = 3  # key, dag run, task instance or asset does not exist
    CONFIG = 4  # configuration that neither statectl nor a worker can use
    UNREACHABLE = 5  # metastore or bucket cannot be reached
    DATA = 6  # stored data is wrong: missing or corrupt object, ref outside the base path
    TOO_LARGE = 7  # value over [state_store] max_value_storage_bytes (use --force)
    PARTIAL = 8  # a long operation finished but some items failed
    LOCKED = 9  # another run holds the lock (prune): try again later
    MAX_DELETE = 10  # stopped before deleting more than --max-delete things (prune): re-run to go on
    UNHEALTHY = 11  # `statectl doctor` found at least one failing check
    PROBLEMS_FOUND = 12  # `statectl check` found problems in the stored state
    CONFLICT = 13  # a key exists at the target with another value (import/cp/mv --on-conflict fail)


class StatectlError(Exception):
    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(StatectlError):
    exit_code = ExitCode.USAGE


class NotFoundError(StatectlError):
    exit_code = ExitCode.NOT_FOUND


class ConfigError(StatectlError):
    exit_code = ExitCode.CONFIG


class UnreachableError(StatectlError):
    exit_code = ExitCode.UNREACHABLE


class DataError(StatectlError):
    exit_code = ExitCode.DATA


class TooLargeError(StatectlError):
    exit_code = ExitCode.TOO_LARGE


class ConflictError(StatectlError):
    exit_code = ExitCode.CONFLICT
