"""Black-box tuning of a model one can only call ("language model as a service").

``params`` (spaces, candidates, results, model facts; no torch), ``scoring`` (the engine: candidates ->
prompts -> loss, accuracy, option scores, with the layer cache of ``cache``), ``objective`` (the one
interface the optimisers use: in-process or remote), ``server`` and ``client`` (HTTP), ``router_bo``
(stage 1: Bayesian optimisation of the router), ``cmaes`` (stage 2 and the baselines: layer-wise
CMA-ES), ``state`` (atomic save/resume), ``tune`` (the methods mp2-bb, bbt, bbtv2 end to end), ``cli``
(``modprompt serve``, ``modprompt bbt``). Importing this package imports none of them.
"""
