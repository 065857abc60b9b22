"""``python -m syncward.cli``: the same as the ``syncward`` console script."""

from syncward.cli import main

main()
