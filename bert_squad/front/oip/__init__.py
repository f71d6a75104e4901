"""The Open Inference Protocol (KServe v2) front door: REST and gRPC codecs around one tensor table (models.py).

Pure code, no web framework and no MindSpore: a request becomes the instances the servable's methods take, and
their answers become a response. grpc_predict_v2.proto is the protocol's published file, vendored unchanged from
github.com/kserve/kserve docs/predict-api/v2; its Python stubs are generated at set-up time (stubs.py).
"""
