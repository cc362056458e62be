#!/usr/bin/env ruby
# Verify idgate's identity JWT (the X-Idgate-Assertion header) with Ruby's standard
# library alone (json, net/http, openssl; Ruby 3 with OpenSSL 3).
#
#   IDGATE_JWKS_URL=http://127.0.0.1:9090/.well-known/jwks.json ruby verify.rb <token>
#
# Prints the verified claims as JSON; exits 1 if the token is not valid.
require 'base64'
require 'json'
require 'net/http'
require 'openssl'

JWKS_URL = ENV.fetch('IDGATE_JWKS_URL', 'http://127.0.0.1:9090/.well-known/jwks.json')
AUDIENCE = ENV.fetch('IDGATE_AUDIENCE', 'legacy-app')
LEEWAY = 60
# Which key type each algorithm must use (no "none", no HMAC, no confusion).
KEY_TYPE = { 'EdDSA' => 'OKP', 'ES256' => 'EC', 'RS256' => 'RSA' }.freeze

class InvalidToken < StandardError; end

def b64(s)
  Base64.urlsafe_decode64(s + '=' * ((4 - s.size % 4) % 4))
end

def asn1(*items) = OpenSSL::ASN1::Sequence.new(items)

# The JWK as an OpenSSL public key (SubjectPublicKeyInfo DER).
def public_key(jwk)
  der =
    case jwk['kty']
    when 'OKP'
      ['302a300506032b6570032100'].pack('H*') + b64(jwk['x'])
    when 'EC'
      point = "\x04".b + b64(jwk['x']) + b64(jwk['y'])
      asn1(asn1(OpenSSL::ASN1::ObjectId.new('id-ecPublicKey'), OpenSSL::ASN1::ObjectId.new('prime256v1')),
           OpenSSL::ASN1::BitString.new(point)).to_der
    when 'RSA'
      n = OpenSSL::BN.new(b64(jwk['n']), 2)
      e = OpenSSL::BN.new(b64(jwk['e']), 2)
      rsa = asn1(OpenSSL::ASN1::Integer.new(n), OpenSSL::ASN1::Integer.new(e)).to_der
      asn1(asn1(OpenSSL::ASN1::ObjectId.new('rsaEncryption'), OpenSSL::ASN1::Null.new(nil)),
           OpenSSL::ASN1::BitString.new(rsa)).to_der
    else
      raise InvalidToken, "unsupported key type #{jwk['kty']}"
    end
  OpenSSL::PKey.read(der)
end

def jwks
  @jwks ||= JSON.parse(Net::HTTP.get(URI(JWKS_URL)))['keys']
end

def verify(token)
  h, p, s = token.split('.')
  raise InvalidToken, 'malformed token' unless h && p && s
  header = JSON.parse(b64(h))
  claims = JSON.parse(b64(p))
  jwk = jwks.find { |k| k['kid'] == header['kid'] }
  jwk ||= (@jwks = nil; jwks.find { |k| k['kid'] == header['kid'] }) # key rotated
  raise InvalidToken, 'unknown key id' unless jwk
  raise InvalidToken, "unexpected algorithm #{header['alg']}" unless KEY_TYPE[header['alg']] == jwk['kty']
  key = public_key(jwk)
  sig = b64(s)
  data = "#{h}.#{p}"
  ok =
    case header['alg']
    when 'EdDSA' then key.verify(nil, sig, data)
    when 'RS256' then key.verify('SHA256', sig, data)
    when 'ES256'
      # JWS carries r||s; OpenSSL wants a DER ECDSA-Sig-Value.
      r = OpenSSL::BN.new(sig[0, 32], 2)
      s2 = OpenSSL::BN.new(sig[32, 32], 2)
      key.verify('SHA256', asn1(OpenSSL::ASN1::Integer.new(r), OpenSSL::ASN1::Integer.new(s2)).to_der, data)
    end
  raise InvalidToken, 'bad signature' unless ok
  now = Time.now.to_i
  raise InvalidToken, 'wrong issuer' unless claims['iss'] == 'idgate'
  raise InvalidToken, 'wrong audience' unless claims['aud'] == AUDIENCE
  raise InvalidToken, 'expired' unless claims['exp'].is_a?(Integer) && claims['exp'] + LEEWAY > now
  raise InvalidToken, 'issued in the future' unless claims['iat'].is_a?(Integer) && claims['iat'] - LEEWAY <= now
  claims
end

# In a Rack/Rails app:
#   claims = verify(request.get_header('HTTP_X_IDGATE_ASSERTION'))

if $PROGRAM_NAME == __FILE__
  begin
    puts JSON.generate(verify(ARGV[0] || ''))
  rescue InvalidToken, OpenSSL::PKey::PKeyError, JSON::ParserError, ArgumentError => e
    warn "invalid token: #{e.message}"
    exit 1
  end
end
