"""PiMoE Studio entry point (`streamlit run app.py`): page config, the shared sidebar, and the page navigation.

To add a page, put its script in app_pages/ and add an `st.Page` to the section it belongs to in PAGES.
"""

import streamlit as st

from studio.sidebar import render_sidebar
from studio.training_session import restore_from_url

st.set_page_config(page_title="PiMoE Studio", page_icon=":material/hub:", layout="wide")

PAGES = {
    "Explore": [
        st.Page("app_pages/routing_lab.py", title="Routing lab", icon=":material/grid_on:", default=True),
        st.Page("app_pages/training.py", title="Live training", icon=":material/model_training:"),
        st.Page("app_pages/computation.py", title="Computation", icon=":material/calculate:"),
    ],
    "Measure": [
        st.Page("app_pages/performance.py", title="Performance", icon=":material/speed:"),
        st.Page("app_pages/optimisation.py", title="Optimisation", icon=":material/compress:"),
    ],
    "Learn": [
        st.Page("app_pages/guide.py", title="Guide", icon=":material/school:"),
    ],
}

page = st.navigation(PAGES)
with st.sidebar:
    st.markdown("### PiMoE Studio")
restore_from_url()  # before the sidebar: a refreshed page puts its run's settings back into the widgets
render_sidebar()
page.run()
