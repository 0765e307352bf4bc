"""The HTTP API (SPEC section 11): one ASGI app, hosted by ``dinoembed serve`` and a Lambda
Function URL. Needs the ``[serve]`` extra (Starlette, python-multipart)."""
