"""PiMoE Studio's app-side code: session-state keys, the shared sidebar, cached engine loaders, the per-session
training runner and the small view-models pages render. The engine (`pimoe/`) never imports this package."""
