"""The command line (cli.py): click groups that parse options and call the packages."""
