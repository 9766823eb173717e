-- Distinct invalid tokens of a valid shape: a random kid (an unknown key) or a known kid with
-- a random signature, alternating. Nothing in them verifies; all must be refused cheaply and
-- none may grow authproxy's memory without bound.
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local n = tonumber(os.getenv("OFFSET") or "0")  -- distinct across consecutive runs

local function b64url(data)
  local out, bits, value = {}, 0, 0
  for i = 1, #data do
    value = value * 256 + data:byte(i)
    bits = bits + 8
    while bits >= 6 do
      bits = bits - 6
      local index = math.floor(value / 2 ^ bits) % 64
      out[#out + 1] = alphabet:sub(index + 1, index + 1)
    end
    value = value % 2 ^ bits
  end
  if bits > 0 then
    local index = (value * 2 ^ (6 - bits)) % 64
    out[#out + 1] = alphabet:sub(index + 1, index + 1)
  end
  return table.concat(out)
end

local function random_text(length)
  local out = {}
  for i = 1, length do
    local index = math.random(1, 64)
    out[i] = alphabet:sub(index, index)
  end
  return table.concat(out)
end


request = function()
  n = n + 1
  local kid = (n % 2 == 0) and ("k" .. n) or os.getenv("KNOWN_KID")
  local header = b64url('{"alg":"RS256","kid":"' .. kid .. '"}')
  local payload = b64url('{"sub":"mallory","exp":4102444800,"n":' .. n .. '}')
  local token = header .. "." .. payload .. "." .. random_text(342)
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. token})
end
