"""The notebook's figures and the verdict: did each network learn, which did better."""
