"""The I/O adapters of ``shared``: the only modules of the package that touch sockets.

Side: any. Protocol decisions stay in the sans-IO modules; these move bytes.
"""
