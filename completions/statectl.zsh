
#compdef statectl

_statectl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _STATECTL_COMPLETE=complete_zsh statectl)
}

compdef _statectl_completion statectl
