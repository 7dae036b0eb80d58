// apiping: the sample service the end-to-end suite builds. It prints the platform it was built for.
package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("GOOS %s GOARCH %s\n", runtime.GOOS, runtime.GOARCH)
}
