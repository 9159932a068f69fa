"""What crosses the wire between coordinator and sites: canonical notebooks and their
hashes, parameter schemas, signatures, message formats and the record MIME type.

Neither side imports the other's internals; both import this package.
"""
