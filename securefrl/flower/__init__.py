"""securefrl on Flower (``pip install securefrl[flower]``): the same experiment as separate processes.

:mod:`securefrl.flower.client_app` is a Flower ClientApp holding one securefrl client (its environment,
agent, update pipeline and protocol client role); :mod:`securefrl.flower.server_app` is a ServerApp on
Flower's Message API holding the server role (sampling, protocol combine/open, server optimizer, results
folder). :mod:`securefrl.flower.appdir` writes the app directory ``flwr run`` executes. Both Flower engines
run these apps unchanged: the simulation engine (virtual clients) and the deployment engine (a SuperLink
and one SuperNode per client). Flower itself is imported only inside the functions that need it.
"""
