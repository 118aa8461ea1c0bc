"""The scoring service: the script AzureML runs (score.py) and a local server for it."""
