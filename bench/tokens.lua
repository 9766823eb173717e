-- Cycles through the tokens in the file named by TOKENS (one a line): every request a token
-- not seen before as long as the run sends fewer requests than the file has lines.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = 0

request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]})
end
