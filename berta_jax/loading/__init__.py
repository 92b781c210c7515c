"""From a name to a loaded model: hub ids and storage URLs (`hub`), the sentence-transformers folder
files (`sentence_config`), the opened folder with its configs (`folder`), and checkpoint weights put
into the model without a random initialisation (`weights`)."""
