"""tokengate: govern LLM API traffic behind Envoy.

The public surface is the `tokengate` command (see `extproc.cli`). Everything else is an
implementation detail and may change between releases.
"""

__version__ = "0.1.0"
