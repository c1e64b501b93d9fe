"""What each ``medfm`` command runs (:mod:`medfm.cli.commands` builds the parsers).

A runner module is imported only when its command runs, so it imports what it needs at module top;
``medfm --help`` imports none of them (:func:`medfm.cli.common.lazy_run`)."""
