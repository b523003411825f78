"""optlayer.solvers (see DESIGN.md section 4)."""
