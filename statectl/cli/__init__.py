"""The Typer command line: parses arguments, calls the core, renders results."""
