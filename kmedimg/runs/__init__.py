"""kmedimg.runs: the applications on top of the library.

Train then evaluate into a run directory, evaluate / predict / explain / export a
run, the demo (and, next, auto, study and pretrain). Each is one function the
`kmedimg` command module of the same name calls.
"""
