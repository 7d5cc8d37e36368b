from coreos_lab.cli import run

run()
