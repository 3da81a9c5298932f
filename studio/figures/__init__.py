"""Figure builders for the dashboard: pure functions, data in, `plotly.graph_objects.Figure` (or HTML) out."""
