"""The original description's API kept working: the enhanced system, its demo, the systems table and run_all_tests."""
