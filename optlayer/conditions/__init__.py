"""optlayer.conditions (see DESIGN.md section 4)."""
