"""`python -m fertk ...`: the command line without the console script (e.g. a checkout on PYTHONPATH)."""

from fertk.cli import main

if __name__ == "__main__":
    main()
