"""`dnd`: the command line of the detector (train, stats, profiles, attack, evaluate, predict, serve).

An application on top of the library (`detector`), the trainer (`training`) and the service (`service`); nothing in
those imports it.
"""
