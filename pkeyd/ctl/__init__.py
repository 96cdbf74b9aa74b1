"""pkeyctl: the operators' command line over pkeyd's REST API."""
