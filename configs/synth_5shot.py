"""The embedded synthetic benchmark, 5-shot. Arg: `fold=N,runlocal`."""

from configs import default, synth_1shot


def get_config(arg=None):
  args = default.parse_arg(arg, fold=0, shots=5, runlocal=False)
  return synth_1shot.get_config(
      f"fold={args['fold']},shots={args['shots']}{',runlocal' if args['runlocal'] else ''}")
