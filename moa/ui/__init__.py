"""Streamlit components of MoA Studio: the run renderer, live-run plumbing, model picker, charts."""
