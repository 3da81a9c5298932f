"""Home page: what PiMoE Studio is, while the engine pages are still to come."""

import streamlit as st

st.title("PiMoE Studio")
st.info("The PiMoE engine is loading… the routing and expert pages arrive with it.")
