#!/usr/bin/env python3
"""Regenerate the RFC 4475 "SIP Torture Test Messages" corpus in this directory.

Every message of RFC 4475 section 3 (3.1.1.x valid, 3.1.2.x invalid, 3.2.x
transaction-layer, 3.3.x application-layer, 3.4.x backward compatibility) is
written to ``<section>_<rfcname>.sip`` exactly as it goes on the wire, and the
facts a parser test should check are written to ``manifest.json``.

The message texts below are typed from the RFC and use the RFC's own
notation (RFC 4475 section 2) so they can be reviewed side by side with it:

* ``<allOneLine>`` ... ``</allOneLine>``: the enclosed lines are one line
  (joined with nothing in between).
* ``<hex>..</hex>``: the enclosed hex digits are raw octets (whitespace
  inside the tag is ignored).
* ``<repeat count=N>text</repeat>``: ``text`` repeated N times.

Every other line ends in CRLF, header lines and body lines alike.  Where a
message ends with an extra empty line, or with no empty line at all, that is
how the RFC's bit-exact archive (Appendix B) has it; see the notes below.

Run ``python tests/data/torture/make_torture.py`` (from anywhere); it
rewrites the .sip files and manifest.json and checks them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# The SDP body most of the messages carry.  Each line ends in CRLF; with
# 9-character addresses (192.0.2.1 ... 192.0.2.9) it is exactly 150 octets.


def sdp(o_addr: str, c_addr: str, t: str = "0 0", short: bool = False) -> str:
    lines = ["v=0", f"o=mhandley 29739 7272939 IN IP4 {o_addr}"]
    if not short:
        lines.append("s=-")
    lines.append(f"c=IN IP4 {c_addr}")
    if not short:
        lines.append(f"t={t}")
    lines += ["m=audio 49217 RTP/AVP 0 12", "m=video 3227 RTP/AVP 31", "a=rtpmap:31 LPC"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# 3.1.1  Valid messages
# ---------------------------------------------------------------------------

WSINV = r"""INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

""" + sdp("192.0.2.3", "192.0.2.4")

INTMETH = r"""<allOneLine>
!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/
crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
</allOneLine>
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
<allOneLine>
To: "BEL:\<hex>07</hex> NUL:\<hex>00</hex> DEL:\<hex>7F</hex>" <sip:1_unusual.URI~(to-be!sure)
&isn't+it$/crazy?,/;;*@example.com>
</allOneLine>
<allOneLine>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=
"<hex>D180D0B0D0B1D0BED182D0B0D18ED189D0B8D0B9</hex>";tag=_token~1'+`*%!-.
</allOneLine>
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:<hex>EFBBBFE5A4A7E5819CE99BBB</hex>
Content-Length: 0

"""

ESC01 = """INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

""" + sdp("192.0.2.1", "192.0.2.1")

ESCNULL = """REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

"""

ESC02 = """RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

"""

LWSDISP = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

"""

LONGREQ = """INVITE sip:user@example.com SIP/2.0
<allOneLine>
To: "I have a user name of <repeat count=10>extreme</repeat> proportion"
<sip:user@example.com:6000;unknownparam1=very<repeat count=20>long</repeat>value;
longparam<repeat count=25>name</repeat>=shortvalue;
very<repeat count=25>long</repeat>ParameterNameWithNoValue>
</allOneLine>
<allOneLine>
F: sip:<repeat count=5>amazinglylongcallername</repeat>@example.net
;tag=12<repeat count=50>982</repeat>424
;unknownheaderparam<repeat count=20>name</repeat>=
unknowheaderparam<repeat count=15>value</repeat>
;unknownValueless<repeat count=10>paramname</repeat>
</allOneLine>
Call-ID: longreq.one<repeat count=20>really</repeat>longcallid
CSeq: 3882340 INVITE
<allOneLine>
Unknown-<repeat count=20>Long</repeat>-Name:
 unknown-<repeat count=20>long</repeat>-value;
 unknown-<repeat count=20>long</repeat>-parameter-name =
 unknown-<repeat count=20>long</repeat>-parameter-value
</allOneLine>
Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
ViA: SIP/2.0/TCP sip29.example.com
VIa: SIP/2.0/TCP sip28.example.com
VIA: SIP/2.0/TCP sip27.example.com
via: SIP/2.0/TCP sip26.example.com
viA: SIP/2.0/TCP sip25.example.com
vIa: SIP/2.0/TCP sip24.example.com
vIA: SIP/2.0/TCP sip23.example.com
V :  SIP/2.0/TCP sip22.example.com
v :  SIP/2.0/TCP sip21.example.com
V  : SIP/2.0/TCP sip20.example.com
v  : SIP/2.0/TCP sip19.example.com
Via : SIP/2.0/TCP sip18.example.com
Via  : SIP/2.0/TCP sip17.example.com
Via: SIP/2.0/TCP sip16.example.com
Via: SIP/2.0/TCP sip15.example.com
Via: SIP/2.0/TCP sip14.example.com
Via: SIP/2.0/TCP sip13.example.com
Via: SIP/2.0/TCP sip12.example.com
Via: SIP/2.0/TCP sip11.example.com
Via: SIP/2.0/TCP sip10.example.com
Via: SIP/2.0/TCP sip9.example.com
Via: SIP/2.0/TCP sip8.example.com
Via: SIP/2.0/TCP sip7.example.com
Via: SIP/2.0/TCP sip6.example.com
Via: SIP/2.0/TCP sip5.example.com
Via: SIP/2.0/TCP sip4.example.com
Via: SIP/2.0/TCP sip3.example.com
Via: SIP/2.0/TCP sip2.example.com
Via: SIP/2.0/TCP sip1.example.com
<allOneLine>
Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;
branch=very<repeat count=50>long</repeat>branchvalue
</allOneLine>
Max-Forwards: 70
<allOneLine>
Contact: <sip:<repeat count=5>amazinglylongcallername</repeat>@host5.example.net>
</allOneLine>
Content-Type: application/sdp
l: 150

""" + sdp("192.0.2.1", "192.0.2.1")

# The REGISTER ends at the empty line after "Content-Length: 0".  Everything
# after it (an empty line, then something that looks like an INVITE) is
# spurious trailing octets in the same UDP datagram.  The archive ends the
# datagram with one more empty line after the INVITE's SDP.
DBLREQ = """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0


INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m =video 3227 RTP/AVP 31
a=rtpmap:31 LPC

"""

SEMIURI = """OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

"""

TRANSPORTS = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

"""

# The second body part is a binary PKCS#7 (CMS SignedData) blob of 342
# octets; it contains NUL and bare CR octets, which are body, not framing.
MPART01 = """MESSAGE sip:kumiko@example.org SIP/2.0
<allOneLine>
Via: SIP/2.0/UDP 127.0.0.1:5070
;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
</allOneLine>
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
<allOneLine>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYj
cBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
</allOneLine>
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: 553

--7a9cbec02ceef655
Content-Type: text/plain
Content-Transfer-Encoding: binary

Hello
--7a9cbec02ceef655
Content-Type: application/octet-stream
Content-Transfer-Encoding: binary

<hex>3082015206092A864886F70D010702A08201433082013F02
01013109300706052B0E03021A300B06092A864886F70D010701318201203082
011C020101307C3070310B300906035504061302555331133011060355040813
0A43616C69666F726E69613111300F0603550407130853616E204A6F7365310E
300C060355040A1305736970697431293027060355040B132053697069742054
65737420436572746966696361746520417574686F7269747902080195007102
330113300706052B0E03021A300D06092A864886F70D01010105000481808EF4
66F948F0522DD2E5978E9D95AAE9F2FE15A06659716292E8DA2AA8D8350A68CE
FFAE3CBD2BFF1675DDD5648E593DD64728F26220F7E941749E330D9A15EDABDB
93D10C42102E7B7289D29CC0C9AE2EFBC7C0CFF9172F3B027E4FC027E1546DE4
B6AA3ABB3E66CCCB5DD6C64B8383149CB8E6FF182D944FE57B65BC99D005</hex>
--7a9cbec02ceef655--
"""

# Reason phrase: "= 2**3 * 5**2 " followed by UTF-8 Russian text
# ("no sto devyanosto devyat' - prostoe").
UNREASON = """<allOneLine>
SIP/2.0 200 = 2**3 * 5**2 <hex>D0BDD0BE20D181D182D0BE20D0B4D0B5D0B2D18F
D0BDD0BED181D182D0BE20D0B4D0B5D0B2D18FD182D18C202D20D0BFD180D0BE
D181D182D0BED0B5</hex>
</allOneLine>
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

""" + sdp("192.0.2.198", "192.0.2.198")

# The status line ends "100" SP CRLF: the SP is required, the phrase is empty.
NOREASON = """SIP/2.0 100<hex>20</hex>
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""

# ---------------------------------------------------------------------------
# 3.1.2  Invalid messages
# ---------------------------------------------------------------------------

BADINV01 = """INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

""" + sdp("192.0.2.15", "192.0.2.15")

CLERR = """INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

""" + sdp("192.0.2.155", "192.0.2.155")

NCL = """INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

""" + sdp("192.0.2.53", "192.0.2.53")

SCALAR02 = """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1<repeat count=100>0</repeat>
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

"""

SCALARLG = """SIP/2.0 503 Service Unavailable
<allOneLine>
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
</allOneLine>
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

"""

QUOTBAL = """INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

""" + sdp("192.0.2.15", "192.0.2.15")

# Note: this Via has no branch parameter in the RFC.
LTGTRURI = """INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + sdp("192.0.2.5", "192.0.2.5", t="3149328700 0")

LWSRURI = """INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + sdp("192.0.2.1", "192.0.2.1", t="3149328700 0")

LWSSTART = """INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + sdp("192.0.2.1", "192.0.2.1")

# Two SP after SIP/2.0; "examle" (sic) is in the RFC.
TRWS = """OPTIONS sip:remote-target@example.com SIP/2.0<hex>2020</hex>
Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

"""

ESCRURI = """INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

""" + sdp("192.0.2.1", "192.0.2.1")

BADDATE = """INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + sdp("192.0.2.5", "192.0.2.5")

REGBADCT = """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

"""

BADASPEC = """OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

"""

# In the RFC's bit-exact archive this message ends right after "l: 0" CRLF:
# there is no empty line terminating the header section.
BADDN = """OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0
"""

BADVERS = """OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

"""

MISMATCH01 = """OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

"""

# The body has no s= and t= lines: 138 octets.
MISMATCH02 = """NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

""" + sdp("192.0.2.1", "192.0.2.1", short=True)

BIGCODE = """SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"""

# ---------------------------------------------------------------------------
# 3.2  Transaction layer semantics
# ---------------------------------------------------------------------------

BADBRANCH = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

"""

# ---------------------------------------------------------------------------
# 3.3  Application layer semantics
# ---------------------------------------------------------------------------

INSUF = """INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

""" + sdp("192.0.2.95", "192.0.2.95")

UNKSCM = """OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""

NOVELSC = """OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""

UNKSM2 = """REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

"""

BEXT01 = """OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

"""

INVUT = """INVITE sip:user@example.com SIP/2.0
Contact: <sip:caller@host5.example.net>
To: sip:j.user@example.com
From: sip:caller@example.net;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: 40

<audio>
 <pcmu port="443"/>
</audio>
"""

REGAUT01 = """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=87321hj23128
Max-Forwards: 8
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length:0

"""

# The body is the 152-octet SDP followed by one more empty line: 154 octets.
MULTI01 = """INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

""" + sdp("192.0.2.25", "192.0.2.25") + "\n"  # fmt: skip

MCL01 = """OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.

"""

BCAST = """SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host28.example.com>

""" + sdp("192.0.2.198", "192.0.2.198")

ZEROMF = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

"""

CPARAM01 = """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

"""

CPARAM02 = """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

"""

REGESCRT = """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0

"""

SDP01 = """INVITE sip:user@example.com SIP/2.0
To: sip:j_user@example.com
Contact: <sip:caller@host15.example.net>
From: sip:caller@example.net;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyKnowsThis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Content-Length: 150
Content-Type: application/sdp

""" + sdp("192.0.2.5", "192.0.2.5")

# ---------------------------------------------------------------------------
# 3.4  Backward compatibility
# ---------------------------------------------------------------------------

# No Via branch, no From tag, no Max-Forwards and no Content-Length: the body
# is everything after the empty line.
INV2543 = """INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0
"""


# ---------------------------------------------------------------------------
# Manifest entries
# ---------------------------------------------------------------------------


def req(
    method: str,
    uri: str,
    call_id: str,
    cseq: int,
    cseq_method: str,
    vias: int,
    mf: int | None,
    from_tag: str | None,
    to_tag: str | None,
    clen: int,
    **extra: Any,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "request",
        "method": method,
        "request_uri": uri,
        "call_id": call_id,
        "cseq_number": cseq,
        "cseq_method": cseq_method,
        "via_count": vias,
    }
    if mf is not None:
        d["max_forwards"] = mf
    d.update({"from_tag": from_tag, "to_tag": to_tag, "content_length": clen})
    d.update(extra)
    return d


def resp(
    code: int,
    reason_phrase: str,
    call_id: str,
    cseq: int,
    cseq_method: str,
    vias: int,
    from_tag: str | None,
    to_tag: str | None,
    clen: int,
) -> dict[str, Any]:
    return {
        "type": "response",
        "status_code": code,
        "reason_phrase": reason_phrase,
        "call_id": call_id,
        "cseq_number": cseq,
        "cseq_method": cseq_method,
        "via_count": vias,
        "from_tag": from_tag,
        "to_tag": to_tag,
        "content_length": clen,
    }


def bad(reason: str, response: int | None) -> dict[str, Any]:
    return {"reason": reason, "expected_response": response}


def sem(response: int | None, reason: str, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"expected_response": response, "reason": reason}
    d.update(extra)
    return d


IM = "!interesting-Method0123456789_*+`.%indeed'~"
IM_URI = (
    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
    "(doesn't-it)@example.com"
)
LONG_CALLID = "longreq.one" + "really" * 20 + "longcallid"
LONG_TAG = "12" + "982" * 50 + "424"
UNREASON_PHRASE = "= 2**3 * 5**2 " + bytes.fromhex(
    "D0BDD0BE20D181D182D0BE20D0B4D0B5D0B2D18FD0BDD0BED181D182D0BE20D0B4D0B5D0B2D18FD182D18C"
    "202D20D0BFD180D0BED181D182D0BED0B5"
).decode("utf-8")

# (section, rfc name, title, kind, message text, expect)
# fmt: off
MESSAGES: list[tuple[str, str, str, str, str, dict[str, Any]]] = [
    ("3.1.1.1", "wsinv", "A Short Tortuous INVITE", "valid", WSINV,
     req("INVITE", "sip:vivekg@chair-dnrc.example.com;unknownparam",
         "wsinv.ndaksdj@192.0.2.1", 9, "INVITE", 3, 68, "98asjd8", "1918181833n", 150,
         contact_count=1, route_count=1)),
    ("3.1.1.2", "intmeth", "Wide Range of Valid Characters", "valid", INTMETH,
     req(IM, IM_URI, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{", 139122385, IM,
         1, 255, "_token~1'+`*%!-.", None, 0)),
    ("3.1.1.3", "esc01", "Valid Use of the % Escaping Mechanism", "valid", ESC01,
     req("INVITE", "sip:sips%3Auser%40example.com@example.net",
         "esc01.239409asdfakjkn23onasd0-3234", 234234, "INVITE", 1, 87, "938", None, 150,
         contact_count=1)),
    ("3.1.1.4", "escnull", "Escaped Nulls in URIs", "valid", ESCNULL,
     req("REGISTER", "sip:example.com", "escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
         14398234, "REGISTER", 1, 70, "839923423", None, 0, contact_count=2)),
    ("3.1.1.5", "esc02", "Use of % When It Is Not an Escape", "valid", ESC02,
     req("RE%47IST%45R", "sip:registrar.example.com",
         "esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf", 29344, "RE%47IST%45R", 1, 70,
         "f232jadfj23", None, 0, contact_count=2)),
    ("3.1.1.6", "lwsdisp", "Message with No LWS between Display Name and <", "valid", LWSDISP,
     req("OPTIONS", "sip:user@example.com", "lwsdisp.1234abcd@funky.example.com", 60,
         "OPTIONS", 1, 70, "323", None, 0)),
    ("3.1.1.7", "longreq", "Long Values in Header Fields", "valid", LONGREQ,
     req("INVITE", "sip:user@example.com", LONG_CALLID, 3882340, "INVITE", 34, 70,
         LONG_TAG, None, 150, contact_count=1)),
    ("3.1.1.8", "dblreq", "Extra Trailing Octets in a UDP Datagram", "valid", DBLREQ,
     req("REGISTER", "sip:example.com", "dblreq.0ha0isndaksdj99sdfafnl3lk233412", 8,
         "REGISTER", 1, 8, "43251j3j324", None, 0, contact_count=1,
         note="Only the REGISTER is the message; the INVITE-like octets after its "
              "empty line are trailing datagram noise to be ignored.")),
    ("3.1.1.9", "semiuri", "Semicolon-Separated Parameters in URI User Part", "valid", SEMIURI,
     req("OPTIONS", "sip:user;par=u%40example.net@example.com", "semiuri.0ha0isndaksdj", 8,
         "OPTIONS", 1, 3, "33242", None, 0, request_uri_user="user;par=u%40example.net")),
    ("3.1.1.10", "transports", "Varied and Unknown Transport Types", "valid", TRANSPORTS,
     req("OPTIONS", "sip:user@example.com", "transports.kijh4akdnaqjkwendsasfdj", 60,
         "OPTIONS", 5, 70, "323", None, 0,
         via_transports=["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"])),
    ("3.1.1.11", "mpart01", "Multipart MIME Message", "valid", MPART01,
     req("MESSAGE", "sip:kumiko@example.org", "3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
         1, "MESSAGE", 1, 70, "2fb0dcc9", None, 553, contact_count=1, route_count=1)),
    ("3.1.1.12", "unreason", "Unusual Reason Phrase", "valid", UNREASON,
     resp(200, UNREASON_PHRASE, "unreason.1234ksdfak3j2erwedfsASdf", 35, "INVITE", 1,
          "11141343", "2229", 154)),
    ("3.1.1.13", "noreason", "Empty Reason Phrase", "valid", NOREASON,
     resp(100, "", "noreason.asndj203insdf99223ndf", 35, "INVITE", 1, "39ansfi3",
          "902jndnke3", 0)),
    ("3.1.2.1", "badinv01", "Extraneous Header Field Separators", "invalid", BADINV01,
     bad("Via and Contact contain empty parameters/values (;;,;,, and ;;;;); "
         "syntactically invalid, respond 400.", 400)),
    ("3.1.2.2", "clerr", "Content Length Larger Than Message", "invalid", CLERR,
     bad("Content-Length 9999 exceeds the octets that follow; over UDP respond 400 "
         "(over a stream, wait for more data / close).", 400)),
    ("3.1.2.3", "ncl", "Negative Content-Length", "invalid", NCL,
     bad("Content-Length is negative (-999); respond with an error, discard the datagram "
         "(close the connection on TCP).", 400)),
    ("3.1.2.4", "scalar02", "Request Scalar Fields with Overlarge Values", "invalid", SCALAR02,
     bad("CSeq number > 2**32-1 (also Max-Forwards 300 > 255, Expires and contact expires "
         "> 2**32-1); respond 400 because of the CSeq.", 400)),
    ("3.1.2.5", "scalarlg", "Response Scalar Fields with Overlarge Values", "invalid", SCALARLG,
     bad("Response with CSeq number > 2**32-1, huge Retry-After and a Warning code of more "
         "than 3 digits; discard it.", None)),
    ("3.1.2.6", "quotbal", "Unterminated Quoted String in Display Name", "invalid", QUOTBAL,
     bad("The To display-name quoted string is never terminated; respond 400.", 400)),
    ("3.1.2.7", "ltgtruri", "<> Enclosing Request-URI", "invalid", LTGTRURI,
     bad("The Request-URI is enclosed in <>; respond 400 (or ignore the brackets, never "
         "forward them).", 400)),
    ("3.1.2.8", "lwsruri", "Malformed SIP Request-URI (embedded LWS)", "invalid", LWSRURI,
     bad("The Request-URI contains LWS (\"sip:user@example.com; lr\"); respond 400.", 400)),
    ("3.1.2.9", "lwsstart", "Multiple SP Separating Request-Line Elements", "invalid",
     LWSSTART,
     bad("Request-Line elements are separated by two SP each; may be rejected as "
         "malformed (400) or the extra SP ignored, never forwarded.", 400)),
    ("3.1.2.10", "trws", "SP Characters at End of Request-Line", "invalid", TRWS,
     bad("Two SP between SIP-Version and the CRLF ending the Request-Line; may be rejected "
         "as malformed (400) or the SP ignored, never forwarded.", 400)),
    ("3.1.2.11", "escruri", "Escaped Headers in SIP Request-URI", "invalid", ESCRURI,
     bad("The SIP Request-URI contains escaped headers (?Route=...); respond 400 or ignore "
         "them, never forward them.", 400)),
    ("3.1.2.12", "baddate", "Invalid Time Zone in Date Header Field", "invalid", BADDATE,
     bad("Date uses time zone EST; RFC 3261 allows only GMT. May reject as malformed or "
         "ignore/adjust the Date.", 400)),
    ("3.1.2.13", "regbadct", "Failure to Enclose name-addr URI in <>", "invalid", REGBADCT,
     bad("The Contact URI has an escaped header (?Route=...) but is not in <> (must be "
         "name-addr); respond 400.", 400)),
    ("3.1.2.14", "badaspec", "Spaces within addr-spec", "invalid", BADASPEC,
     bad("The To addr-spec has spaces inside the <> (\"< sip:t.watson@example.org >\"); "
         "respond 400.", 400)),
    ("3.1.2.15", "baddn", "Non-token Characters in Display Name", "invalid", BADDN,
     bad("To and From display names contain non-token characters (comma) but are not "
         "quoted; respond 400. (The RFC archive also has no empty line ending the "
         "headers.)", 400)),
    ("3.1.2.16", "badvers", "Unknown Protocol Version", "invalid", BADVERS,
     bad("SIP-Version is SIP/7.0; respond 505 Version Not Supported.", 505)),
    ("3.1.2.17", "mismatch01", "Start Line and CSeq Method Mismatch", "invalid", MISMATCH01,
     bad("Request-Line method OPTIONS does not match CSeq method INVITE; respond 400.", 400)),
    ("3.1.2.18", "mismatch02", "Unknown Method with CSeq Method Mismatch", "invalid",
     MISMATCH02,
     bad("Unknown method NEWMETHOD with CSeq method INVITE; respond 501 (400 also "
         "acceptable).", 501)),
    ("3.1.2.19", "bigcode", "Overlarge Response Code", "invalid", BIGCODE,
     bad("Status code 4294967301 is larger than 699; drop the response.", None)),
    ("3.2.1", "badbranch", "Missing Transaction Identifier", "semantic", BADBRANCH,
     sem(400, "Via branch is only the magic cookie z9hG4bK with no identifier; parser must "
              "not break; reject with 400 (preferably statelessly) or fall back to RFC 2543 "
              "transaction matching.", also_acceptable=["rfc2543-transaction-matching"])),
    ("3.3.1", "insuf", "Missing Required Header Fields", "semantic", INSUF,
     sem(400, "No Call-ID, From or To (nor Max-Forwards); must not break, respond 400.")),
    ("3.3.2", "unkscm", "Request-URI with Unknown Scheme", "semantic", UNKSCM,
     sem(416, "Request-URI scheme nobodyKnowsThisScheme is unknown; respond 416 Unsupported "
              "URI Scheme.")),
    ("3.3.3", "novelsc", "Request-URI with Known but Atypical Scheme", "semantic", NOVELSC,
     sem(416, "Request-URI uses the registered but atypical soap.beep scheme; parse it, then "
              "416 if the scheme is never accepted (404 if some such URIs might be).",
         also_acceptable=[404])),
    ("3.3.4", "unksm2", "Unknown URI Schemes in Header Fields", "semantic", UNKSM2,
     sem(400, "To (isbn:), From (http:) and Contact (name:) use non-SIP schemes; valid "
              "syntax, but a registrar responds 400 since the To AOR must be SIP/SIPS. "
              "Proxies forward it normally.")),
    ("3.3.5", "bext01", "Proxy-Require and Require", "semantic", BEXT01,
     sem(420, "Require and Proxy-Require list unknown option-tags; respond 420 Bad Extension "
              "with Unsupported listing them (a proxy checks Proxy-Require).")),
    ("3.3.6", "invut", "Unknown Content-Type", "semantic", INVUT,
     sem(415, "Body of unknown type application/unknownformat; proxies process normally, "
              "an endpoint responds 415 Unsupported Media Type.")),
    ("3.3.7", "regaut01", "Unknown Authorization Scheme", "semantic", REGAUT01,
     sem(401, "Authorization uses unknown scheme NoOneKnowsThisScheme; a registrar that "
              "authenticates re-challenges with 401, one that does not ignores it; a non-"
              "registrar endpoint may respond 405.", also_acceptable=[200, 405])),
    ("3.3.8", "multi01", "Multiple Values in Single Value Required Fields", "semantic",
     MULTI01,
     sem(400, "Multiple Call-ID, To, From, Max-Forwards and CSeq values; respond 400.")),
    ("3.3.9", "mcl01", "Multiple Content-Length Values", "semantic", MCL01,
     sem(400, "Two different Content-Length values (13 and 5); framing is unknowable, "
              "respond with an error (discard the datagram; close the connection on TCP).")),
    ("3.3.10", "bcast", "200 OK Response with Broadcast Via Header Field Value", "semantic",
     BCAST,
     sem(None, "Well-formed 200 OK whose second Via is 255.255.255.255; an endpoint "
               "discards it and a proxy must drop it rather than forward to broadcast.")),
    ("3.3.11", "zeromf", "Max-Forwards of Zero", "semantic", ZEROMF,
     sem(483, "Max-Forwards is 0; a proxy must not forward and responds 483 Too Many Hops; "
              "an endpoint processes it normally (e.g. 200 to the OPTIONS).",
         also_acceptable=[200])),
    ("3.3.12", "cparam01", "REGISTER with a Contact Header Parameter", "semantic", CPARAM01,
     sem(200, "Contact is an addr-spec without <>, so unknownparam is a contact (header) "
              "parameter, not a URI parameter; the REGISTER succeeds.")),
    ("3.3.13", "cparam02", "REGISTER with a url-parameter", "semantic", CPARAM02,
     sem(200, "Contact is a name-addr, so unknownparam is a URI parameter of the bound "
              "contact; the REGISTER succeeds and bindings keep it in the URI.")),
    ("3.3.14", "regescrt", "REGISTER with a URL Escaped Header", "semantic", REGESCRT,
     sem(200, "Contact URI has an escaped Route header inside <>; the REGISTER succeeds and "
              "the binding keeps the escaped header.")),
    ("3.3.15", "sdp01", "Unacceptable Accept Offering", "semantic", SDP01,
     sem(406, "Accept lists only text/nobodyKnowsThis, so no SDP answer may be sent; "
              "respond 406 Not Acceptable (400 also appropriate).", also_acceptable=[400])),
    ("3.4.1", "inv2543", "INVITE with RFC 2543 Syntax", "semantic", INV2543,
     sem(None, "Legal RFC 2543 request: no Via branch, no From tag, no Max-Forwards, no "
               "Content-Length (body is the rest of the datagram); accept and process it "
               "normally for backward compatibility.", accept=True)),
]
# fmt: on


# ---------------------------------------------------------------------------
# Expansion of the RFC 4475 notation
# ---------------------------------------------------------------------------

_ALL_ONE_LINE = re.compile(r"<allOneLine>\n(.*?)\n</allOneLine>", re.S)
_HEX = re.compile(r"<hex>(.*?)</hex>", re.S)
_REPEAT = re.compile(r"<repeat count=(\d+)>(.*?)</repeat>", re.S)


def expand(text: str) -> bytes:
    """Turn a message written in RFC 4475 notation into wire octets."""
    if not text.isascii():
        raise ValueError("message source must be ASCII; use <hex> for other octets")
    for line in text.split("\n"):
        if line != line.rstrip(" \t"):
            raise ValueError(f"trailing whitespace must be written as <hex>: {line!r}")
    text = _ALL_ONE_LINE.sub(lambda m: m.group(1).replace("\n", ""), text)
    text = _HEX.sub(lambda m: "<hex>" + "".join(m.group(1).split()) + "</hex>", text)
    text = _REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)
    if "<allOneLine>" in text or "</allOneLine>" in text or "<repeat" in text:
        raise ValueError("unbalanced RFC 4475 notation")
    # Line ends become CRLF before <hex> is decoded, so decoded octets
    # (which may include CR, LF or NUL) are never touched.
    text = text.replace("\n", "\r\n")
    out = bytearray()
    pos = 0
    for m in _HEX.finditer(text):
        out += text[pos : m.start()].encode("ascii")
        out += bytes.fromhex(m.group(1))
        pos = m.end()
    out += text[pos:].encode("ascii")
    return bytes(out)


# ---------------------------------------------------------------------------
# Self-checks (plain byte arithmetic; no SIP parsing)
# ---------------------------------------------------------------------------


def header_end(data: bytes) -> int:
    i = data.find(b"\r\n\r\n")
    return -1 if i < 0 else i + 4


def check(name: str, kind: str, data: bytes, expect: dict[str, Any]) -> None:
    end = header_end(data)
    head = data if end < 0 else data[:end]
    if b"\n" in head.replace(b"\r\n", b""):
        raise AssertionError(f"{name}: bare LF in the header section")
    if kind == "valid":
        body = data[end:]
        clen = expect["content_length"]
        if name == "dblreq":
            # The REGISTER has no body; the rest of the datagram is noise.
            assert clen == 0 and body.startswith(b"\r\nINVITE sip:joe@example.com SIP/2.0\r\n")
        else:
            assert len(body) == clen, f"{name}: body is {len(body)} octets, expected {clen}"
        if "request_uri" in expect:
            first = data.split(b"\r\n", 1)[0]
            want = f"{expect['method']} {expect['request_uri']} SIP/2.0".encode()
            assert first == want, f"{name}: request line {first!r}"


def main() -> int:
    manifest = []
    written = set()
    for section, name, title, kind, text, expect in MESSAGES:
        data = expand(text)
        check(name, kind, data, expect)
        fname = f"{section}_{name}.sip"
        (HERE / fname).write_bytes(data)
        written.add(fname)
        manifest.append(
            {"file": fname, "section": section, "title": title, "kind": kind, "expect": expect}
        )
    assert len(manifest) == 49, len(manifest)
    for stale in HERE.glob("*.sip"):
        if stale.name not in written:
            stale.unlink()
    with open(HERE / "manifest.json", "w", encoding="ascii", newline="\n") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=True)
        f.write("\n")
    for entry in manifest:
        print(f"{entry['file']:<28} {entry['kind']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
