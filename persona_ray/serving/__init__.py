"""Serving: the Ray Serve application (retriever + tailored LLM + HTTP ingress)."""
