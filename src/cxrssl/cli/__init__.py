"""The ``cxrssl`` command line: one module per verb group, each thin (parse, call, print)."""
