"""Example texts for the routing lab, mixing prose, logic and arithmetic so each expert type has tokens to claim."""

__all__ = ["CUSTOM", "PRESETS"]

CUSTOM = "Your own text"

PRESETS: dict[str, str] = {
    "Word problem": "Alice has 17 apples and buys 25 more, so she has 17 + 25 = 42 apples.",
    "Logic": "If it rains then the grass is wet. The grass is not wet, therefore it did not rain.",
    "Comparison": "Is 3.5 * (12 - 4) >= 27? Yes: 3.5 * 8 = 28 and 28 > 27 is true.",
    "Mixed paragraph": (
        "The train leaves at 14:05 and travels 120 km at 80 km/h, so the trip takes 120 / 80 = 1.5 hours. "
        "If the train is late or the bridge is closed, then Bob takes the bus; the bus costs 3 x 4 = 12 euros. "
        "All cats are mammals and some mammals swim, but that does not imply that some cats swim."
    ),
    "Prose": "The old lighthouse keeper watched the storm roll in across the grey, restless sea.",
}
