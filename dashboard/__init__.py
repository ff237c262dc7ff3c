"""The Streamlit dashboard over the results store (read-only). Entry script: dashboard/app.py."""
