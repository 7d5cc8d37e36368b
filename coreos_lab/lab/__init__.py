"""One lab directory: lab.yaml (settings, model, validation), the plan of machines, .lab/ state, rendering."""
