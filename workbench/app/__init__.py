"""Helpers of the Streamlit app (palette, charts, component records); no torch at import."""
