"""bench/peers: inferwatch against BentoML, MLServer and a bare FastAPI app (see run.py)."""
