-- wrk sending a small chat completion, for bench/chain.py's model rows (the gateway's
-- models: route and LiteLLM's proxy). `wrk -s bench/chat_completion.lua URL`; the bearer
-- token comes with -H as in every row. The body is bench/model_path.py's CHAT_REQUEST.
-- wrk builds the request once per connection from these fields, Content-Length included.

wrk.method = "POST"
wrk.body = '{"model": "bench-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}'
wrk.headers["Content-Type"] = "application/json"
