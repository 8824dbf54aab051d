"""What ``lamina bench`` offers to choose from: the other tools it can compare with and the
kinds of synthetic layers it generates.

Apart from lamina.bench (which imports the whole unpack machinery) so that the CLI can build
its parser, and say these in ``--help``, without importing the bench itself.
"""

TOOLS = ("tar", "pigz", "bsdtar", "umoci")
SYNTHETIC_KINDS = ("small-files", "huge-files", "deep", "whiteouts", "hardlinks")
