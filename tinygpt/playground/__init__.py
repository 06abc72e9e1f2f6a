"""The Gradio story playground: which model to serve and loading it (serving.py), and the page (ui.py)."""
