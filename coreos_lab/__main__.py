from coreos_lab.cli import main

main()
