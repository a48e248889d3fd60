-- wrk script: POST a small chat-completion request, the way mpdistill's workers do.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0001"
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"Say something short about row 1."}]}'
