"""Turns SPUs into vectors (CLIP-style image and text towers) and keeps them in a FAISS index."""
