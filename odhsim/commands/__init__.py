"""The `odhsim` commands, grouped by job; odhsim/cli.py registers them on its app, in the order `--help` lists."""
