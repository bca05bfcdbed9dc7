#include "textflag.h"

// bswapMask is the PSHUFB mask that turns four big-endian 32-bit words
// into little-endian ones.
DATA bswapMask<>+0(SB)/8, $0x0405060700010203
DATA bswapMask<>+8(SB)/8, $0x0c0d0e0f08090a0b
GLOBL bswapMask<>(SB), RODATA|NOPTR, $16

// SHA-256 compression on the SHA extensions (see sha256_amd64.go).
// X0 is the message-plus-constant operand SHA256RNDS2 reads; X1 holds
// state words A,B,E,F and X2 C,D,G,H; X3–X6 are the four message words
// in flight; X7 is scratch; X8, X9 keep the incoming state; X10 is the
// byte-swap mask. Each group of four rounds is one SHA256RNDS2 pair,
// with the schedule for a later group computed alongside it.

// ROUNDS2(m, k): X0 = message words m plus round constants K[k/4...],
// and the first two of their four rounds.
#define ROUNDS2(m, k) \
	MOVO m, X0; \
	MOVOU ·roundK+k(SB), X7; \
	PADDD X7, X0; \
	SHA256RNDS2 X0, X1, X2

// ROUNDS4: the other two rounds, on the upper words of X0.
#define ROUNDS4 \
	PSHUFD $0x0E, X0, X0; \
	SHA256RNDS2 X0, X2, X1

// SCHEDULE(cur, prev, next): finish next, the words four groups on:
// add W[t-7] (from prev and cur), then σ1 of cur.
#define SCHEDULE(cur, prev, next) \
	MOVO cur, X7; \
	PALIGNR $4, prev, X7; \
	PADDD X7, next; \
	SHA256MSG2 cur, next

// LOAD(off, m): message words m from the block, byte-swapped.
#define LOAD(off, m) \
	MOVOU off(SI), m; \
	PSHUFB X10, m

// func hasSHANI() bool
TEXT ·hasSHANI(SB), NOSPLIT, $0-1
	MOVB $0, ret+0(FP)
	MOVL $0, AX
	CPUID
	CMPL AX, $7
	JB   done
	MOVL $1, AX
	CPUID
	ANDL $(1<<9 | 1<<19), CX
	CMPL CX, $(1<<9 | 1<<19)
	JNE  done
	MOVL $7, AX
	MOVL $0, CX
	CPUID
	SHRL $29, BX
	ANDL $1, BX
	MOVB BX, ret+0(FP)
done:
	RET

// func compressSHANI(h *[8]uint32, p *byte)
TEXT ·compressSHANI(SB), NOSPLIT, $0-16
	MOVQ h+0(FP), DI
	MOVQ p+8(FP), SI
	MOVOU bswapMask<>(SB), X10

	// h[0..7] = A..H: rearrange into ABEF (X1) and CDGH (X2).
	MOVOU (DI), X7
	MOVOU 16(DI), X2
	PSHUFD $0xB1, X7, X7
	PSHUFD $0x1B, X2, X2
	MOVO X7, X1
	PALIGNR $8, X2, X1
	PBLENDW $0xF0, X7, X2
	MOVO X1, X8
	MOVO X2, X9

	// Rounds 0–15 read the block; 16–63 the schedule.
	LOAD(0, X3)
	LOAD(16, X4)
	LOAD(32, X5)
	LOAD(48, X6)
	ROUNDS2(X3, 0); ROUNDS4 // rounds 0–3
	ROUNDS2(X4, 16); ROUNDS4; SHA256MSG1 X4, X3 // rounds 4–7
	ROUNDS2(X5, 32); ROUNDS4; SHA256MSG1 X5, X4 // rounds 8–11
	ROUNDS2(X6, 48); SCHEDULE(X6, X5, X3); ROUNDS4; SHA256MSG1 X6, X5 // rounds 12–15
	ROUNDS2(X3, 64); SCHEDULE(X3, X6, X4); ROUNDS4; SHA256MSG1 X3, X6 // rounds 16–19
	ROUNDS2(X4, 80); SCHEDULE(X4, X3, X5); ROUNDS4; SHA256MSG1 X4, X3 // rounds 20–23
	ROUNDS2(X5, 96); SCHEDULE(X5, X4, X6); ROUNDS4; SHA256MSG1 X5, X4 // rounds 24–27
	ROUNDS2(X6, 112); SCHEDULE(X6, X5, X3); ROUNDS4; SHA256MSG1 X6, X5 // rounds 28–31
	ROUNDS2(X3, 128); SCHEDULE(X3, X6, X4); ROUNDS4; SHA256MSG1 X3, X6 // rounds 32–35
	ROUNDS2(X4, 144); SCHEDULE(X4, X3, X5); ROUNDS4; SHA256MSG1 X4, X3 // rounds 36–39
	ROUNDS2(X5, 160); SCHEDULE(X5, X4, X6); ROUNDS4; SHA256MSG1 X5, X4 // rounds 40–43
	ROUNDS2(X6, 176); SCHEDULE(X6, X5, X3); ROUNDS4; SHA256MSG1 X6, X5 // rounds 44–47
	ROUNDS2(X3, 192); SCHEDULE(X3, X6, X4); ROUNDS4; SHA256MSG1 X3, X6 // rounds 48–51
	ROUNDS2(X4, 208); SCHEDULE(X4, X3, X5); ROUNDS4 // rounds 52–55
	ROUNDS2(X5, 224); SCHEDULE(X5, X4, X6); ROUNDS4 // rounds 56–59
	ROUNDS2(X6, 240); ROUNDS4 // rounds 60–63

	// Add the incoming state; back to A..H order.
	PADDD X8, X1
	PADDD X9, X2
	PSHUFD $0x1B, X1, X1
	PSHUFD $0xB1, X2, X2
	MOVO X1, X7
	PBLENDW $0xF0, X2, X1
	PALIGNR $8, X7, X2
	MOVOU X1, (DI)
	MOVOU X2, 16(DI)

	// Leave nothing of the block, the state or the schedule behind.
	JMP ·zeroVectors(SB)
