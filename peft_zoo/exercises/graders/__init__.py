"""Machinery of the graders in ``practice/<track>/test_exNN_<name>.py``, kept out of the grader
files so each reads as its tests:

- :mod:`.injection_zoo`, :mod:`.injection_calls`, :mod:`.injection_checks`: the model zoo,
  strategies and checks of the injection graders (challenges 04, 05, 09, 10);
- :mod:`.adapter_blocks`: the sublayer, adapter and block pair of challenges 03 and 06;
- :mod:`.refusals`: the one check that learner code refuses bad input (13, 16, 19);
- ``exNN_<name>.py``: the independent models, bug tables and strategies of the longer graders.

Each grader still lists its own ``PLANTED_BUGS`` (read by :mod:`..mutation` without importing it).
"""
