"""
L7: the HTTP/1.1 reverse proxy.
"""
