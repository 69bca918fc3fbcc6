"""Training loops; import the submodule you need.

  fer_config  FerTrainConfig, TrainResult       fer_state  EarlyStopping, RunState, last.pt, history.csv
  fer         train_fer (the epoch loop)        fer_data   dataset paths -> training / validation sets
  stargan     train_stargan (the loop)          stargan_config, stargan_files  its options and files
"""
