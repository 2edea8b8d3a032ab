"""The remote side: a typed boundary (`api`) the steps call, the Together adapter behind it (`together`, the only
importer of the SDK), the one classifier of HTTP failures, the one retry layer, the pause gate and the chat client."""
