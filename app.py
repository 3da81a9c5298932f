"""PiMoE Studio entry point: declares the pages and runs the one the user picked (`streamlit run app.py`)."""

import streamlit as st

st.set_page_config(page_title="PiMoE Studio", layout="wide")

home = st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)

st.navigation([home]).run()
